"""Federated fine-tuning: clients whose data stays with them (issue 15). So far: the partitioning
of one labelled file into client files (`tunery federate --partition-only`)."""
