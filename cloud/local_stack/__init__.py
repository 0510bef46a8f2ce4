"""The whole battwin stack on one machine: broker, AWS emulator, shadows, IoT rules, a fleet and the dashboard.

``battwin demo`` reaches it through the ``battwin.demo`` entry point (``cloud.local_stack.demo:run_full_demo``),
so the device package never imports the cloud package.
"""
