"""IoT rule → Lambda → DynamoDB + S3 data lake."""
