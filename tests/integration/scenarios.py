"""Scenarios used by integration tests (inline, so tests never depend on example edits)."""

from __future__ import annotations

from mams.domain.config import Scenario, parse_scenario_text

PHONE = """
name = "phone accessories (test)"

[buyer]
handle = "@Buyer"

[[buyer.items]]
item_name = "iPhone 15 case"
quantity = 2
min_price = 8.00
max_price = 14.00

[[buyer.items]]
item_name = "USB-C cable"
quantity = 3
min_price = 4.00
max_price = 9.00

[[sellers]]
handle = "@TechMart"
style = "rude"
customer_retention_weight = 0.2
profit_maximization_weight = 0.8
[[sellers.inventory]]
item_name = "iPhone 15 case"
cost_price = 7.00
selling_price = 18.00
least_price = 11.00
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 2.00
selling_price = 9.50
least_price = 5.50

[[sellers]]
handle = "@GadgetHub"
style = "neutral"
customer_retention_weight = 0.5
profit_maximization_weight = 0.5
[[sellers.inventory]]
item_name = "iPhone 15 case"
cost_price = 6.50
selling_price = 16.00
least_price = 10.00

[[sellers]]
handle = "@QuickTech"
style = "sweet"
customer_retention_weight = 0.7
profit_maximization_weight = 0.3
[[sellers.inventory]]
item_name = "iPhone 15 case"
cost_price = 8.00
selling_price = 15.00
least_price = 12.50
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 3.00
selling_price = 8.00
least_price = 6.00
"""


def phone() -> Scenario:
    """The phone-accessories market: two items, three sellers of different styles."""
    return parse_scenario_text(PHONE, fmt="toml")
