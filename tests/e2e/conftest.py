"""
pytest glue for the hotplex e2e tests.

* `async def test_...` functions run under asyncio.run (pytest-asyncio is not
  available) with an overall timeout: 60 s, or @pytest.mark.timeout_s(N).
* Fixtures: `gw` (a fresh fast gateway per test), `gw_factory` (start gateways
  with settings; all are stopped with SIGTERM and exit 0 asserted at teardown),
  `module_gw` (one gateway shared by a module).
* On a failing test the stderr of every running gateway is attached to the report.
"""

import asyncio
import inspect
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hp  # noqa: E402

DEFAULT_TIMEOUT_S = 60


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout_s(n): overall timeout of an async test")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    m = pyfuncitem.get_closest_marker("timeout_s")
    timeout = m.args[0] if m else DEFAULT_TIMEOUT_S
    args = {a: pyfuncitem.funcargs[a] for a in pyfuncitem._fixtureinfo.argnames}

    async def run():
        try:
            await asyncio.wait_for(fn(**args), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"test did not finish within {timeout}s") from None

    asyncio.run(run())
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for g in list(hp.Gateway.live):
            rep.sections.append((f"hotplex stderr [{g.name}]", g.log_tail()))


class Factory:
    def __init__(self):
        self.gws = []

    def __call__(self, settings=None, data_dir=None, fast=True, start=True, name=None):
        g = hp.Gateway(settings=settings, data_dir=data_dir, fast=fast,
                       name=name or f"gw{len(self.gws) + 1}")
        self.gws.append(g)
        if start:
            g.start()
        return g

    def finish(self):
        errors = []
        for g in self.gws:
            try:
                g.finish(check=True)
            except AssertionError as e:
                errors.append(str(e))
        if errors:
            raise AssertionError("\n".join(errors))


@pytest.fixture
def gw_factory():
    f = Factory()
    yield f
    f.finish()


@pytest.fixture
def gw(gw_factory):
    return gw_factory()


@pytest.fixture(scope="module")
def module_gw():
    f = Factory()
    g = f(name="module_gw")
    yield g
    f.finish()
