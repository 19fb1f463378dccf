"""Pass/fail bookkeeping the Python test scripts share: one line per check, then `N passed, N failed`."""

_counts = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    """Records and prints one check; returns whether it passed."""
    if ok:
        _counts["passed"] += 1
        print(f"ok   {name}", flush=True)
    else:
        _counts["failed"] += 1
        print(f"FAIL {name}\n     {detail}", flush=True)
    return ok


def failures():
    return _counts["failed"]


def summary():
    """Prints the totals; returns the script's exit code."""
    print(f"{_counts['passed']} passed, {_counts['failed']} failed")
    return 1 if _counts["failed"] else 0
