"""Offline evaluation: how well the monitor tells thieves from honest callers, the attack and
benign streams it is measured on, and what each output-shaping defense costs a thief and an
honest caller.

Offline like the red team it draws its attacks from: nothing the gateway runs imports it
(checked by the contracts in `.importlinter`).
"""
