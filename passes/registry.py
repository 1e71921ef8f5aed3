"""Imports every pass module so that they register themselves. Add new pass files here."""
