"""retain.training"""
