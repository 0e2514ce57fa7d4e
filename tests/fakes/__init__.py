"""Local fakes of cloud APIs for tests."""
