"""Test helpers that ship with aioiam: an IAM emulator with scriptable faults, for your own tests and demos.

- :class:`FakeIAM` answers IAM's API-key, compute-resource (``cr-token``) and ``assume`` grants
  and the VPC instance metadata service's token calls, in process (``fake.transport``) or over
  real HTTP on loopback (``fake.serve()``, ``fake.serve_in_thread()``).
- :class:`Fault` scripts what its next answers do wrong: ``fake.fail_next(2, Fault.error(503))``.
- :data:`OMIT` leaves a field out of a token answer: ``Fault.token(access_token=OMIT)``.
- The pytest plugin :mod:`aioiam.testing.pytest_plugin` (registered automatically once aioiam is
  installed) provides the ``fake_iam`` fixture: a ``FakeIAM`` served on loopback for one test.

See ``docs/testing.md`` for testing your own code with them, and ``docs/failures.md`` for what
aioiam does in each failure.
"""

from ._fake_iam import FakeIAM
from ._faults import OMIT, Fault
from ._server import DropConnection, ServerAddress

__all__ = ["OMIT", "DropConnection", "FakeIAM", "Fault", "ServerAddress"]
