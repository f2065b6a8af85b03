"""MAMS: the Multi-Agent Marketplace Simulator."""

__version__ = "0.1.0"
