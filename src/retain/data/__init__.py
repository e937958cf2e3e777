"""retain.data"""
