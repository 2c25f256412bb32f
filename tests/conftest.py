from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "nydus"


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The standard test layers (helpers.compact_env.make_layers), built once per module; modules
    that need other layers define their own `layers`."""
    from helpers.compact_env import make_layers

    return make_layers(tmp_path_factory.mktemp("layers"))
