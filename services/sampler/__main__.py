from services.sampler.server import main

main()
