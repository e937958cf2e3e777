"""retain.adapters"""
