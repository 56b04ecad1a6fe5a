import pytest
from relaybox_host.build import compile_firmware
from relayproc import Relay


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory):
    """The firmware compiled once with mpy-cross for the unix board, as a board loads it."""
    out = tmp_path_factory.mktemp("build-unix")
    compile_firmware("unix", out)
    return out


@pytest.fixture
def relay_factory(build_dir, tmp_path):
    started = []

    def make(name="relay", start=True, **config):
        r = Relay(build_dir, tmp_path / name, **config)
        started.append(r)
        return r.start() if start else r

    yield make
    for r in started:
        r.stop()


@pytest.fixture
def relay(relay_factory):
    return relay_factory()
