"""Guest VM tooling: the QEMU build with our device, and booting guests with it."""
