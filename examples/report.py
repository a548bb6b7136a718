"""A script an agent might write: build a small sales report as an .xlsx file with
pandas, read it back, and print a summary. It needs pandas and openpyxl and nothing
from the network."""

import pandas as pd

sales = pd.DataFrame(
    {
        "region": ["north", "south", "north", "east", "south", "east"],
        "units": [12, 7, 3, 9, 14, 5],
        "price": [2.5, 3.0, 2.5, 4.0, 3.0, 4.0],
    }
)
sales["revenue"] = sales["units"] * sales["price"]
summary = sales.groupby("region", as_index=False)[["units", "revenue"]].sum()

summary.to_excel("report.xlsx", index=False, engine="openpyxl")
back = pd.read_excel("report.xlsx", engine="openpyxl")

print(back.to_string(index=False))
print(f"total revenue: {back['revenue'].sum():.2f}")
