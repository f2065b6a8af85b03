"""The HTTP API of `mams serve` (`mams.api`): the specification's endpoints over the one
market runtime. Layering: builds on domain/, bus/, storage/ and actors/, never on the CLI.
"""
