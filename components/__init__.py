"""Greengrass component projects (GDK) and their build script: python -m components.build."""
