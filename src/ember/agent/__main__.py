from ember.agent.main import main

main()
