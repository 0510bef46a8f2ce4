"""Fleet retraining: assemble the training set, start SageMaker, judge the challenger, roll out the winner."""
