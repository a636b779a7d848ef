"""The kernel every other package builds on: the `Call`, guards and their chain, the
error answers, the protocol-neutral codecs and the metrics type.

It imports nothing else of modelfence but `modelfence.errors`, so that features depend on it
and never on the gateway that assembles them (checked by the contracts in `.importlinter`).
"""
