"""Request and response schemas of ``/api/v1``, one module per resource, one class per direction
(``PoolCreate``/``PoolUpdate``/``PoolRead``/``PoolPage``). They describe the wire format only."""
