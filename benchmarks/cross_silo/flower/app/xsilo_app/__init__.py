"""The cross-silo benchmark's Flower App (ServerApp and ClientApp); model.py and aggregate.py join it when staged."""
