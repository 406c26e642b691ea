"""The principle-following (instructable) reward model: encoding, model, loss, save/load."""
