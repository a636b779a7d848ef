"""Differential privacy for answers: mechanisms that randomise what a caller is told, with a
stated ε per answer, and an accountant that composes what each principal and tenant has been
told against a budget. Needs the ``privacy`` extra (OpenDP's samplers, dp-accounting).

Modules: `mechanisms` (the dp-* defenses and their costs), `forms` (their text forms, read
without the extra), `accountant` (ε from answer counts, RDP), `store` (counts and remembered
answers: memory, SQLite, PostgreSQL), `repeats` (the repeat memory's keys and values),
`budget` (caps per principal and tenant, alerts), `guard` (the two guards), `wiring` (the
parts of one gateway). Nothing is imported here, so naming the package costs nothing."""
