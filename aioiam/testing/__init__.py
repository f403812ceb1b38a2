"""Test helpers that ship with aioiam: an IAM emulator for your own tests and demos."""

from ._fake_iam import FakeIAM, Fault
from ._server import DropConnection, ServerAddress

__all__ = ["DropConnection", "FakeIAM", "Fault", "ServerAddress"]
