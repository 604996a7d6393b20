"""Ray jobs and the command line. The only package that imports ray."""
