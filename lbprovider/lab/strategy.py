"""The per-kind hooks the store calls around every write, mirroring apiserver REST strategies.

A real server defaults, validates and allocates each kind differently; the store runs the
same sequence for all kinds and asks a `Strategy` at each step. The base class is the
behaviour of a kind with no special rules. Strategies only shape objects and report field
errors; they must not write to storage or emit watch events themselves.
"""

from __future__ import annotations

import logging
from typing import Any

from lbprovider.lab.errors import FieldError

logger = logging.getLogger(__name__)

JSON = dict[str, Any]


class Strategy:
    """Hooks with the default behaviour: nothing to default, validate or allocate."""

    #: Whether `.status` sent on create is kept (Nodes) or reset (everything else).
    status_on_create = False

    #: Whether a `/status` write keeps the metadata it sends (labels, annotations,
    #: finalizers; system fields are reset as on any write) or resets all of it. Services
    #: keep it: kube-apiserver's Service status strategy resets only `spec`.
    status_keeps_metadata = False

    def prepare_create(self, obj: JSON) -> None:
        """Default fields of a new object (after metadata is filled in)."""

    def prepare_update(self, new: JSON, old: JSON) -> None:
        """Default and carry over fields on a write to the main resource."""

    def prepare_status(self, new: JSON, old: JSON) -> None:
        """Adjust a `/status` write (spec, and metadata unless `status_keeps_metadata`, are
        already reset by the store)."""

    def validate(self, obj: JSON, old: JSON | None) -> list[FieldError]:
        """Field errors of the whole object; `old` is None on create."""
        return []

    def validate_status(self, new: JSON, old: JSON) -> list[FieldError]:
        return []

    def allocate(self, new: JSON, old: JSON | None) -> None:
        """Claim what the new object holds (IPs, ports); raise ApiError if it cannot."""

    def release(self, obj: JSON) -> None:
        """Give back what a removed object held."""
