# relaybox: a LAN mail relay for MicroPython boards.
VERSION = "0.1.0"
