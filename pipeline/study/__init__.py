"""``pipeline compare``: the method comparison study (plan, jobs, report)."""
