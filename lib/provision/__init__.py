"""The provisioning tool behind `ci/provision` (`python -m lib.provision`): run the guide's notebooks
against an environment and keep a run record (cli, record), check a live cluster against the guide
(check), take it apart (teardown); and the maintenance around the stored notebooks: refreshing them
(notebooks), how much of the guide they show (coverage), the offline diagram renderer (renderer).
A notebook's steps (runbook) are read from its headings by all of them."""
