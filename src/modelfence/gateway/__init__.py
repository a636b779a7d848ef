"""The gateway: assembles the kernel and the features into the app, its routes and listeners.

Nothing but the CLI (and `modelfence.build_app`) imports it.
"""
