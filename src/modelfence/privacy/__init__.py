"""Differential privacy for answers: mechanisms that randomise what a caller is told, with a
stated ε per answer, and an accountant that composes what each principal and tenant has been
told against a budget. Needs the ``privacy`` extra (OpenDP's samplers, dp-accounting)."""
