"""The README's first command runs the demo without arguments: its defaults must find the shared fixtures."""

from pathlib import Path

from worker.demo.run import FIXTURES


def test_the_demo_finds_the_shared_fixtures_beside_the_checkout_by_default(fixtures: Path) -> None:
    assert FIXTURES.resolve() == fixtures.resolve()
    assert (FIXTURES / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
