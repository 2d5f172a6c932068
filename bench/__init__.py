"""Side-by-side benchmark of Sluice, direct-to-upstream and third-party gateways."""
