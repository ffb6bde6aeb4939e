"""Merchant reports: rollups kept current from every change, and the reports read from them."""
