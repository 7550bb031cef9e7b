"""pytest plugin (``-p no_skips``): a skipped test fails the session, with the skip reasons listed.

The aihwkit tox env uses it so that a missing optional simulator fails CI instead of skipping."""

_skipped = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _skipped and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _skipped:
        terminalreporter.write_line(f"no_skips: {len(_skipped)} test(s) skipped, which this run does not allow:", red=True)
        for nodeid in _skipped:
            terminalreporter.write_line(f"  {nodeid}")
