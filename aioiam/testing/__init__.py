"""Test helpers that ship with aioiam: an IAM emulator for your own tests and demos."""

from ._fake_iam import FakeIAM, Fault

__all__ = ["FakeIAM", "Fault"]
