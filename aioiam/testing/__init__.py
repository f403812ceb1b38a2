"""Test helpers that ship with aioiam: an IAM emulator with scriptable faults, for your own tests and demos.

- :class:`FakeIAM` answers IAM's API-key grant in process (``fake.transport``) or over real HTTP on
  loopback (``fake.serve()``, ``fake.serve_in_thread()``).
- :class:`Fault` scripts what its next answers do wrong: ``fake.fail_next(2, Fault.error(503))``.
- :data:`OMIT` leaves a field out of a token answer: ``Fault.token(access_token=OMIT)``.

See ``docs/failures.md`` for what aioiam does in each failure and how to test your code against it.
"""

from ._fake_iam import OMIT, FakeIAM, Fault
from ._server import DropConnection, ServerAddress

__all__ = ["OMIT", "DropConnection", "FakeIAM", "Fault", "ServerAddress"]
