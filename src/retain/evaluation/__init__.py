"""retain.evaluation"""
