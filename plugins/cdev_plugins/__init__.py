"""cdev's built-in plugins: providers and transports, registered through the ``cdev``
entry-point group exactly as a third-party plugin would be."""
