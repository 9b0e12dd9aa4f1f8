"""Multi-host tests: every host is a Linux network namespace on a private switch."""
