"""Parameter sweeps: items bound and ordered, their index, the contact sheet, and the runners that run items here or on Ray."""
