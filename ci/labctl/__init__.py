"""The built-in lab: three real hosts (systemd-booted systemd-nspawn containers) on this
machine, each in its own network namespace, as the guide's VM1, VM2 and VM3.

`ci/lab up|down|status|ssh` is the command; see book/maintain.md, "The lab".
"""
