"""The background task that releases expired reservations, so nobody has to call the API.

Runs in every API process (a reservation expired twice is released once: the second sweep finds
nothing). It must never stop on an error: it logs and tries again at the next tick.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.session import transaction
from lbprovider.services.context import Actor
from lbprovider.services.reservations import expire_reservations

logger = logging.getLogger(__name__)

SWEEPER = "reservation-expiry"


def sweep_once(sessions: sessionmaker[Session]) -> int:
    with transaction(sessions) as session:
        return expire_reservations(session=session, actor=Actor(SWEEPER))


async def sweep_forever(sessions: sessionmaker[Session], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            released = await asyncio.to_thread(sweep_once, sessions)
        except Exception:
            logger.exception("reservation sweep failed", extra={"event": "reservation_sweep"})
            continue
        if released:
            logger.info(
                "expired reservations released",
                extra={"event": "reservation_sweep", "released": released},
            )
