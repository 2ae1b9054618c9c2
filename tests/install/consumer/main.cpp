// The reference run through an installed meshtrain: the tutorial's API, nothing internal.
#include <cstdio>

#include "meshtrain/meshtrain.hpp"

int main(int argc, char** argv) {
  meshtrain::DistributedManager manager(&argc, &argv);
  meshtrain::TrainingConfig config;  // the tutorial's: 20 epochs, batch 32, Adam 1e-3
  const meshtrain::ReferenceData data = meshtrain::make_reference_data(256, 4, config.seed);
  meshtrain::Trainer trainer(meshtrain::Mlp::simple_pde_model(config.seed), config);
  const meshtrain::FitResult result = trainer.fit(data.x, data.y);
  if (manager.rank() == 0) {
    std::printf("ranks %d initial %.6f final %.6f\n", manager.size(), result.metrics.initial_loss,
                result.metrics.final_loss);
  }
  return result.metrics.final_loss < result.metrics.initial_loss ? 0 : 1;
}
