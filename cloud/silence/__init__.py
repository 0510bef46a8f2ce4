"""The scheduled check for devices that fell silent (:mod:`cloud.silence.handler`)."""
