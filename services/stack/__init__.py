"""The local stack (`clipjet stack`): its supervisor, identity, keys, demo, and the launchers of its real servers
(devstack)."""
