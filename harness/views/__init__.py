"""What reads records and shows them: the report, compare, gate, plots and number formatting. No
torch.
"""
