"""The algorithm stages: advantage estimators, policy losses, token masks and group filters.

Each is a registered component (rlkit.registry) with declared options; the trainer resolves the configured
ones once at start-up and calls them without knowing which method they implement (architecture rules 4 and 6).
"""
