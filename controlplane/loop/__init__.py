"""The closed loop: decisions of the nightly controller, approvals, verification, reports."""
