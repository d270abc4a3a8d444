"""encoder_client"""
