"""Test support: building a federation's keys, configs and running nodes."""
